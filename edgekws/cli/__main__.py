"""``python -m edgekws.cli ...`` (and ``torchrun ... -m edgekws.cli distill ...``) run the command line."""

from edgekws.cli import main

main()
