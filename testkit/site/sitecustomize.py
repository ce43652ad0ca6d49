# Python imports this at start-up when testkit/site is on PYTHONPATH (Hosts.env puts it there).
from testkit import hosts

hosts.install()
