"""The parts of the flask-afterward demo; ``examples/demo.py`` puts them together.

- :mod:`demoapp.extensions`: the one ``Afterward`` object, and a hook that logs every
  delivered response.
- :mod:`demoapp.signup`: a form whose welcome mail is sent after the response.
- :mod:`demoapp.signup_jobs`: the same, with the mail as a durable job.
- :mod:`demoapp.reports`: a slow report built by an accepted view, with a progress bar.
"""

from __future__ import annotations
