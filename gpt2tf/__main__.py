"""`python -m gpt2tf <command> [flags]`: the same as the `gpt2tf` command."""

from gpt2tf.cli import main

main()
