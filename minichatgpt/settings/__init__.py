"""Every option of every command: one option mechanism (`options`: a row per option, the parser and the checks made
from the rows) and every option's row and default (`config`), each method's own read from ppo_np.METHODS."""
