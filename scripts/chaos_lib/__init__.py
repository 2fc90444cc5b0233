"""``scripts/chaos``: several real server nodes on one real Redis (standalone or Sentinel), a steady
load of mints and racing consumes, while faults are injected; every operation is counted and the
invariants are checked at the end (issue 13 item 4). ``scripts/chaos --help`` lists the options."""
