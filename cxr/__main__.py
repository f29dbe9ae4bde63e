from cxr.cli import entry

entry()
