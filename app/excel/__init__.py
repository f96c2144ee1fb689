"""Spreadsheet files: cell safety shared by every export, results workbooks (and the
approval templates, imports and error files of the Excel issue)."""
