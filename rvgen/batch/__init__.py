"""From a folder to outputs: plan jobs, run them, report progress."""
