"""The ``costjax`` command (``pip install "costjax[cli]"``); never imported by ``costjax``."""
