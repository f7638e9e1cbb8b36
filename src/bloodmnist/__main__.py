"""`python -m bloodmnist` entry point."""

from bloodmnist.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
