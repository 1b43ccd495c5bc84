"""The parts of the flask-afterward demo; ``examples/demo.py`` puts them together.

- :mod:`demoapp.extensions`: the one ``Afterward`` object, and a hook that logs every
  delivered response.
- :mod:`demoapp.signup`: a form whose welcome mail is sent after the response.
"""

from __future__ import annotations
