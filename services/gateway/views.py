"""The gateway's pages: health for probes and supervisors, and a placeholder home page."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

bp = Blueprint("gateway", __name__)

_HOME = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>mailblast</title></head>
<body>
<h1>mailblast</h1>
<p>The web console comes later. Use the <code>mailblast</code> command meanwhile.</p>
<p lang="ja">Web コンソールは準備中です。当面は <code>mailblast</code> コマンドをお使いください。</p>
</body>
</html>
"""


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/")
def home() -> Response:
    """A minimal page saying the console is yet to come."""
    return Response(_HOME, mimetype="text/html")
