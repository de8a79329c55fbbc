"""The RLHF loop every method shares: prompt, sample, score, step (`rlhf`), how it drives each method of
ppo_np.METHODS (`methods`), sampling and scoring in chunks (`sampling`), the collapse measures it logs
(`collapse`), and best-of-n, the baseline that trains nothing (`best_of_n`)."""
