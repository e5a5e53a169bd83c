"""Review API: the human review queue; reviewers approve, reject or modify pending proposals."""
