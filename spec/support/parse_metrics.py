"""Parses OpenMetrics text from stdin with the prometheus_client parser
(strict: a malformed scrape raises) and prints its samples as JSON:
[[name, {label: value}, value], ...]."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump(samples, sys.stdout)
