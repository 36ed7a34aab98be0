"""``python -m snnkern.demo [options]``: see ``--help`` and docs/demo.md."""
from .cli import main

if __name__ == "__main__":
    main()
