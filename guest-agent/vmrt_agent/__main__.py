"""``python -m vmrt_agent --port-fd N``: the agent outside a VM (tests, development)."""

from vmrt_agent.main import main

if __name__ == "__main__":  # the image's import smoke test imports every module
    main()
