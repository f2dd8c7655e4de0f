"""Query a self_skip server with the openai package.

Start the server first, e.g.:
    vllm serve MODEL --speculative-config '{"method": "self_skip"}'
(with the CPU wheel: vllm-selfspec serve MODEL ...), then:
    python examples/openai_client.py [BASE_URL]
"""

import sys

from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1", api_key="none")
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name three prime numbers."}],
        max_tokens=64,
        temperature=0.0,
        stream=True,
    )
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main()
