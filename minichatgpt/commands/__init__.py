"""The command line: how a command ends and where it may write (`entry`), and the entry points (`cli`), each of which
parses its options (minichatgpt.settings), checks them all, then calls the job or the experiment."""
