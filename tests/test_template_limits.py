"""Templates cannot exhaust the machine: every hostile body is a TemplateError naming the limit.

The pytest timeouts only turn a hang into a failure; no test measures time. Memory is measured:
a limit must fire before the allocation it guards.
"""

from __future__ import annotations

import contextvars
import threading
import tracemalloc
from pathlib import Path

import pytest

import promptkit as pk
from promptkit._check import check_template
from promptkit._templating import TemplateLimits, compile_template
from promptkit.errors import TemplateError

HOSTILE = [
    # (body, the limit that must fire)
    (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "max_steps",
    ),
    ("{{ lipsum(n=200000) }}", "max_steps"),
    ("{{ (9**999999999) > 1 }}", "max_int_digits"),
    ("{{ 7**(10**8) }}", "max_int_digits"),
    ("{% for i in range(100000) %}{{ range(100000)|sum }}{% endfor %}", "max_steps"),
    ("{{ ('a ' * 10**7)|wordwrap(1) }}", "max_length"),
    ("{{ 'x'|center(10**9) }}", "max_length"),
    ("{{ '%*d'|format(10**9, 1) }}", "max_length"),
    ("{{ '{:>1000000000}'.format('x') }}", "max_length"),
    ("{{ 'a' * 10**10 }}", "max_length"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "max_depth"),
    ("{% for x in [[1]] recursive %}{{ loop([x]) }}{% endfor %}", "max_depth"),
    ("{% set s = 'x' * 1000000 %}{{ [s] * 100000 }}", "max_length"),
    ("{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}", "max_length"),
    (
        "{% macro m() %}{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}"
        "{% endmacro %}{{ m()|length }}",
        "max_length",
    ),
    ("{% set s = 'x' * 1000000 %}{{ s ~ s ~ s ~ s ~ s }}", "max_length"),
    ("{% set s = 'x' * 3000000 %}{{ s + s }}", "max_length"),
    ("{{ 'x'.center(10**9) }}", "max_length"),
    ("{{ 'x'.zfill(10**9) }}", "max_length"),
    ("{{ '%1000000000d' % 1 }}", "max_length"),
    ("{{ '{:{w}}'.format('x', w=10**9) }}", "max_length"),
    ("{{ {}.fromkeys(range(100000), 'x' * 1000000) }}", "max_length"),
    ("{{ range(10)|batch(10**9, 'x')|list }}", "max_length"),
    ("{{ 'x'|indent(10**9) }}", "max_length"),
    ("{{ [1, 2]|tojson(indent=10**9) }}", "max_length"),
    ("{{ 'ab'|replace('', 'x' * 3000000) }}", "max_length"),
    ("{{ range(100000)|map('string')|join(',' * 1000) }}", "max_length"),
    (
        "{% for i in range(100000) %}{{ range(100000)|map('int')|list|length }}{% endfor %}",
        "max_steps",
    ),
    ("{% set x = 10**4000 %}{{ x * x }}", "max_int_digits"),
    ("{{ ('a' * 1000000).translate({97: 'x' * 1000}) }}", "max_length"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "max_length"),
    ("{{ 'x'.encode().center(10**9) }}", "max_length"),
    ("{{ ('a.b ' * 1000000)|urlize }}", "max_steps"),
    ("{% set s = 'x' * 1000000 %}{{ ','.join(range(100)|map('replace', '', s)) }}", "max_length"),
    ("{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s]|upper }}", "max_length"),
    ("{% set s = 'x' * 1000000 %}{{ range(100)|map('replace', '', s)|join }}", "max_length"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "limit"), HOSTILE)
def test_hostile_bodies_are_template_errors_naming_the_limit(body, limit):
    template = compile_template(body)
    measure = limit in ("max_length", "max_int_digits")  # the limits that guard allocations
    if measure:
        tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match=f"template limit '{limit}' exceeded"):
            template.render({})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak:,} bytes allocated before the limit fired"


@pytest.mark.timeout(60)
def test_limits_hold_in_worker_threads():
    """promptkit serve renders in threads, where signal.alarm cannot stop a render."""
    template = compile_template(HOSTILE[0][0])
    errors: list[BaseException] = []

    def render() -> None:
        try:
            template.render({})
        except BaseException as exc:  # collected for the main thread's assertions
            errors.append(exc)

    threads = [threading.Thread(target=render) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 3
    assert all(isinstance(e, TemplateError) and "'max_steps'" in str(e) for e in errors)


@pytest.mark.timeout(60)
def test_concurrent_renders_in_copied_contexts_keep_their_own_budgets():
    """asyncio.to_thread runs each render in a copy of one context: budgets must not be shared."""
    template = compile_template(
        "{% for i in range(100000) %}{% for j in range(3) %}{% endfor %}{% endfor %}"
    )  # 400,000 steps: two renders together would pass the limit
    start = threading.Barrier(2)
    results: list[object] = []

    def render() -> None:
        start.wait()
        try:
            results.append(template.render({}))
        except TemplateError as exc:  # collected for the main thread's assertions
            results.append(exc)

    context = contextvars.copy_context()
    threads = [threading.Thread(target=context.copy().run, args=(render,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["", ""]


def test_budget_is_per_render_not_cumulative():
    template = compile_template(
        "{% for i in range(100000) %}{% for j in range(2) %}{% endfor %}{% endfor %}"
    )
    for _ in range(2):  # 300,000 steps each: under the limit every time
        assert template.render({}) == ""


def test_limits_can_be_set_per_template_and_name_their_value():
    limits = TemplateLimits(max_steps=10, max_length=50, max_depth=3)
    with pytest.raises(TemplateError, match="'max_steps' exceeded.*limit of 10 "):
        compile_template("{% for i in range(11) %}{% endfor %}", limits=limits).render({})
    with pytest.raises(TemplateError, match="'max_length' exceeded.*limit of 50 "):
        compile_template("{{ 'x' * 51 }}", limits=limits).render({})
    with pytest.raises(TemplateError, match="'max_depth' exceeded.*limit of 3 "):
        compile_template(
            "{% macro f(n) %}{{ f(n - 1) if n else 0 }}{% endmacro %}{{ f(3) }}", limits=limits
        ).render({})
    assert compile_template("{% for i in range(10) %}{% endfor %}", limits=limits).render({}) == ""


def test_self_is_refused_at_compile_time_with_its_line():
    with pytest.raises(TemplateError, match="'self' is Jinja's template object") as caught:
        compile_template("ok\n{{ self }}")
    assert caught.value.line == 2


def test_the_line_where_a_limit_fired_is_reported():
    template = compile_template("a\nb\n{{ 'x' * 10**9 }}", first_line=7)
    with pytest.raises(TemplateError, match="max_length") as caught:
        template.render({})
    assert caught.value.line == 9


def test_ordinary_templates_still_render():
    body = (
        "{% macro item(x) %}- {{ x|upper }} {{ '%03d'|format(loop_index) }}{% endmacro %}"
        "{% set loop_index = 7 %}"
        "{% for x in names if x %}{{ item(x) }}{% if not loop.last %}\n{% endif %}{% endfor %}\n"
        "{{ names|join(', ') }} {{ '{:>5}'.format('ab') }} {{ 2 ** 10 }} {{ 'ab' * 3 }} "
        "{{ names|map('title')|list }} {{ (names + ['z'])|length }} {{ 'a' ~ 1 ~ [2] }}"
        "{{ range(3)|sum }} {{ {'k': 1}|tojson }} {{ 'x'|center(5) }}|"
        "{{ lipsum(1, False, 2, 3)|length > 0 }}"
    )
    text = compile_template(body).render({"names": ["ann", "", "bo"]})
    assert text == (
        "- ANN 007\n- BO 007\nann, , bo    ab 1024 ababab ['Ann', '', 'Bo'] 4 a1[2]"
        '3 {"k": 1}   x  |True'
    )


@pytest.mark.timeout(60)
def test_hostile_template_file_loads_and_checks_fast_then_fails_at_render(tmp_path: Path):
    path = tmp_path / "bomb.prompty"
    path.write_text("---\nname: bomb\n---\nHello\n{{ (9**999999999) > 1 }}\n", encoding="utf-8")
    prompt = pk.load_prompt(path)  # Jinja's constant folding would compute 9**999999999 here
    assert check_template(path) == []
    with pytest.raises(TemplateError, match="'max_int_digits'") as caught:
        prompt.render({})
    assert caught.value.line == 5 and caught.value.source == str(path)


def test_a_limit_error_points_to_the_public_limits():
    assert pk.TemplateLimits is TemplateLimits
    assert pk.TemplateLimits().max_steps == 500_000  # the README's numbers
    with pytest.raises(TemplateError, match=r"see promptkit\.TemplateLimits\)"):
        compile_template("{{ 'x' * 51 }}", limits=TemplateLimits(max_length=50)).render({})
