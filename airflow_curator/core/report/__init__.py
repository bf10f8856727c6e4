"""The curation report: its data gathered from storage, and the HTML page drawn from it."""
