"""python -m byzbn.flower: see byzbn.flower.command (`--help` explains every option)."""
import importlib.util
import sys

if importlib.util.find_spec("flwr") is None:
    print('python -m byzbn.flower: error: Flower is not installed: pip install -c constraints.txt "byzbn[flower]"',
          file=sys.stderr)
    sys.exit(1)

from byzbn.flower.simulation import offline  # noqa: E402

offline()  # before flwr is imported

from byzbn.flower.command import main  # noqa: E402

sys.exit(main())
