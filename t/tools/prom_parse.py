#!/usr/bin/python3
# Parses Prometheus exposition text on stdin with the reference parser
# (Debian's python3-prometheus-client) and prints one sample a line:
#   <family type> <sample name>{<label>=<value>,...} <value>
# Exits 1 (with the parser's error) when the text does not parse.
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
                name = "%s{%s}" % (s.name, labels) if labels else s.name
                print("%s %s %r" % (family.type, name, s.value))
    except Exception as e:  # the parser's own errors
        print("unparsable: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
