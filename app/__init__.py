"""City Service Heat: an anomaly lens over city service requests, incidents and closures."""
