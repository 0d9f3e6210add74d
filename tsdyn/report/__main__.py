"""``python -m tsdyn.report``."""
import sys

from tsdyn.report import main

sys.exit(main())
