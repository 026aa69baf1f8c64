"""The labelling app: people judge a sample set in the browser (``d3po label``).

Modules: ``tasks`` (what one decision is about, from the manifest), ``assign`` (who judges what
next), ``app`` (the web app: FastAPI, plain HTML/CSS/JS in ``static/``), ``guard`` (token, Host
and body-size checks), ``server`` (uvicorn in the foreground, a thread or a process),
``report`` (counts and agreement), ``importers`` (other tools' formats), ``simulate`` (the toy
annotator over HTTP), ``benchmark`` (decisions per second). The record they all read, and the
app appends to, is the judgements JSON Lines of ``d3po.preferences``.
"""
