"""The main job and its run folder: files, manifest and lock (`run_folder`), the stages (`stages`), the job that runs,
skips, resumes or refuses them and writes the report (`pipeline`), and a finished run as every command opens it
(`finished_run`)."""
