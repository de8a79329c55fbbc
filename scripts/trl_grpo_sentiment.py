"""Our experiment with TRL: GRPO from a finished run's exported reference model, against the run's n-gram proxy as a
Python reward function, on the run's training prompts: the first tokens of reviews from its held-out split, which the
proxy never saw (docs/graduate.md, section 3). Not run in CI.

    minichatgpt-export --name default --model reference /tmp/reference_hf
    pip install trl==1.16.0 transformers==5.25.0 datasets
    python scripts/trl_grpo_sentiment.py --name default /tmp/reference_hf /tmp/grpo_out

Written against trl 1.16.0 and transformers 5.25.0 (trl 1.16.0 asks for transformers>=4.56.2), with datasets for
the prompt table. Every GRPOConfig field and GRPOTrainer argument named here is checked by tests/methods/test_graduate.py
against tests/data/trl_1_16_0_fields.json, extracted from the trl 1.16.0 wheel (scripts/trl_fields.py).

The options are minichatgpt-compare's GRPO (minichatgpt/settings/config.py, CompareConfig; compare.py) in trl's names: 64
responses in groups of 4 per generation batch, 2 iterations over each (an optimizer step per pass over the whole
batch, in forward passes of 16 rows), beta 0.25 on the k3 KL without the bias correction, the "grpo" loss, Adam at
a constant 2e-4, 92 generation batches (the comparison's budget of 5,888 responses: trl's max_steps counts optimizer
steps, 92 x 2), responses of at most 16 tokens at temperature 1, no dropout. What still differs from ours: trl
clips the gradient norm at 1.0 (max_grad_norm), and trl's reward function reads the prompt and completion as text,
which our proxy scores as the run's rollouts do.
"""
import argparse

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from minichatgpt.run.finished_run import FinishedRun


def proxy_reward(run):
    """trl calls a reward function with prompts=, completions= (texts) and more keywords -> one float each."""
    def ngram_proxy(prompts, completions, **kwargs):
        return [float(s) for s in run.proxy.score([p + c for p, c in zip(prompts, completions)])]
    return ngram_proxy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="minichatgpt-export --model reference of the run")
    parser.add_argument("out_dir", help="where trl writes its checkpoints")
    parser.add_argument("--name", default="default")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()
    run = FinishedRun.open(f"{args.runs_dir}/{args.name}")
    prompts = [run.tokenizer.decode([int(t) for t in q]) for q in run.prompts[0]]   # [1]: the evaluation's
    config = GRPOConfig(
        output_dir=args.out_dir,
        learning_rate=2e-4, lr_scheduler_type="constant", weight_decay=0.0,
        per_device_train_batch_size=16, gradient_accumulation_steps=4,   # 64 responses per generation batch
        num_generations=4, num_iterations=2, max_steps=184,           # 92 generation batches x 2 iterations
        beta=0.25, use_bias_correction_kl=False, loss_type="grpo", scale_rewards="group",
        max_completion_length=16, temperature=1.0, disable_dropout=True,
        seed=0, use_cpu=True, bf16=False, logging_steps=1, report_to="none",
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model_dir),
        reward_funcs=[proxy_reward(run)],
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(args.model_dir),
    )
    trainer.train()
    trainer.save_model(args.out_dir)


if __name__ == "__main__":
    main()
