"""nbval settings for the notebooks: compare text outputs, skip rich outputs that vary by run.

Widget views carry random model ids, and HTML/JavaScript renderings (DataFrame HTML, widget
fallbacks) repeat what the text/plain output of the same cell already shows, so those mime
types are not compared; text/plain outputs, including every number, are.
"""

SKIP_MIME = ("text/html", "application/javascript", "application/vnd.jupyter.widget-view+json",
             "application/vnd.jupyter.widget-state+json")


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        parent = getattr(item, "parent", None)
        if parent is not None and hasattr(parent, "skip_compare"):
            parent.skip_compare = tuple(set(parent.skip_compare) | set(SKIP_MIME))
