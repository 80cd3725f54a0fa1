"""``python -m vmrt_agent --port-fd N``: the agent outside a VM (tests, development)."""

from vmrt_agent.main import main

main()
