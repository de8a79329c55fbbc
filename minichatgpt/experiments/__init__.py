"""The experiments on a finished run, which never import each other or the main job: every method with one budget
(`compare`) and reward-model over-optimisation (`overopt`)."""
