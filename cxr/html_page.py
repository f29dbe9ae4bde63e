"""The one look of the pages the project writes (the run report, the monitoring page): a self-contained HTML
document, its images inline, styled the same way. Needs nothing but the standard library."""
import html

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} figure{display:inline-block;margin:4px;font-size:12px} figure img{width:160px}
.gallery img{width:180px} .bad{color:#b00;font-weight:bold} .good{color:#070} .muted{color:#888}"""


def page(title: str, body: str, script: str = "") -> str:
    """A whole document; `title` is text (escaped here), `body` and `script` are markup."""
    script = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}{script}</body></html>")
