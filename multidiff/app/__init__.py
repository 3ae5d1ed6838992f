"""`multidiff app RUN`: a local web page (Gradio, the `app` extra) to complete a run's signals by hand --
paint the hole of a picture, choose the gap of a recording, pick the known frames of a clip -- with any
completion method of pipelines/complete.py. session.py does the work (no gradio), server.py is the page."""
from .session import AppRun, Request, Result

__all__ = ["AppRun", "Request", "Result"]
