"""The code-corpus pipeline behind `litgpt_lite prepare_code` (install with `pip install 'litgpt_lite[code]'`).

Modules, in the order the stages run: `sources` (input and opt-out), `languages`, `quality`, `licenses`, `dedup`,
`pii`; `stages` wraps them as plain functions over record dicts; `pipeline` runs them and writes the output.
"""
