"""`python -m paligemma_cli ...` (what `accelerate launch -m paligemma_cli` runs)."""

from paligemma_cli.cli import main

if __name__ == "__main__":
    main()
