"""``python -m layertap``: the same as the ``layertap`` command."""

from layertap.cli import main

if __name__ == "__main__":
    main()
