#!/usr/bin/env python
"""Django's command line for the example front end: ``python example_project/manage.py runserver``.

Run it from anywhere; the repository root is put on ``sys.path`` so ``example_project`` imports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    """Run a Django management command with the example project's settings."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
