"""The console's home: who is logged in, and the fleet at a glance."""

from flask import render_template

from host_tools.server.web.console.auth import operator_route


@operator_route("/console/", role="viewer", nav="Home", nav_order=0)
def home():
    from host_tools.server.web.console.fleet import summary

    return render_template("console/home.html", summary=summary())
