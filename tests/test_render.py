"""The template engine: Handlebars semantics as SendGrid uses them, the helpers, and the
sandbox (no Python object access, compile limits, render budgets that stop fast)."""

from __future__ import annotations

import time
from types import MappingProxyType

import pytest

from bench import template_render
from mtaserver.render import (
    CompileLimits,
    RenderBudget,
    TemplateCache,
    TemplateError,
    compile_template,
    freeze,
    substitute,
)


def r(src: str, data: object = None, **budget: object) -> str:
    return compile_template(src).render(data if data is not None else {}, RenderBudget(**budget))  # type: ignore[arg-type]


# -- expressions and escaping ------------------------------------------------------------
def test_variables_dotted_paths_and_missing_values() -> None:
    data = {"user": {"profile": {"firstName": "Ben"}}, "n": 3, "f": 2.5, "z": 0}
    assert r("<p>Hello {{user.profile.firstName}}</p>", data) == "<p>Hello Ben</p>"
    assert r("{{user/profile/firstName}}", data) == "Ben"
    assert r("<p>Hello {{user.orders.first}}</p>", data) == "<p>Hello </p>"
    assert r("{{n}} {{f}} {{z}} {{nope}}", data) == "3 2.5 0 "
    assert r("{{a}} {{b}} {{c}}", {"a": True, "b": False, "c": None}) == "true false "
    assert r("{{x}}", {"x": 3.0}) == "3"
    assert r("{{l}} {{o}}", {"l": [1, "a", None], "o": {"k": 1}}) == "1,a, [object Object]"
    assert (
        r("{{items.[1]}} {{items.1}} {{items.length}} {{s.length}}", {"items": [1, 2], "s": "abc"})
        == "2 2 2 3"
    )
    assert r("{{[odd key]}}", {"odd key": "ok"}) == "ok"


def test_html_escaping_matches_handlebars() -> None:
    v = {"v": "& < > \" ' ` ="}
    assert r("{{v}}", v) == "&amp; &lt; &gt; &quot; &#x27; &#x60; &#x3D;"
    assert r("{{{v}}}", v) == v["v"]
    assert r("{{& v}}", v) == v["v"]
    assert r("{{~{v}~}}", v) == v["v"]
    # the template's own text is never escaped
    assert r("<b>&amp;</b>{{v}}", {"v": "<"}) == "<b>&amp;</b>&lt;"


def test_literals_comments_and_escaped_mustaches() -> None:
    assert r("{{!-- a }} comment --}}x{{! short }}y") == "xy"
    assert r(r"\{{name}} {{name}}", {"name": "N"}) == "{{name}} N"
    assert r('{{#if "yes"}}s{{/if}}{{#if 0}}z{{/if}}{{#if 0 includeZero=true}}Z{{/if}}') == "sZ"


def test_whitespace_control_and_standalone_lines() -> None:
    assert r("a  {{~name~}}  b", {"name": "N"}) == "aNb"
    src = "<ul>\n  {{#each items}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>\n"
    assert r(src, {"items": ["x", "y"]}) == "<ul>\n  <li>x</li>\n  <li>y</li>\n</ul>\n"
    src = "{{#if a}}\nA\n{{else}}\nB\n{{/if}}\n"
    assert r(src, {"a": 1}) == "A\n" and r(src, {}) == "B\n"
    # a block tag sharing its line with content is not standalone
    assert r("x {{#if a}}y{{/if}}\n", {"a": 1}) == "x y\n"


# -- blocks ---------------------------------------------------------------------------------
def test_if_else_if_chain_and_unless() -> None:
    src = "{{#if user.male}}Sir{{else if user.female}}Madame{{else}}Customer{{/if}}"
    assert r(src, {"user": {"male": True}}) == "Sir"
    assert r(src, {"user": {"female": True}}) == "Madame"
    assert r(src, {"user": {}}) == "Customer"
    assert r("{{#unless active}}off{{else}}on{{/unless}}", {"active": False}) == "off"
    assert r("{{#unless active}}off{{else}}on{{/unless}}", {"active": True}) == "on"
    falsy = [False, None, "", 0, []]
    for value in falsy:
        assert r("{{#if v}}T{{else}}F{{/if}}", {"v": value}) == "F", value
    for value in [True, "0", 1, [0], {}, -1]:
        assert r("{{#if v}}T{{else}}F{{/if}}", {"v": value}) == "T", value


def test_each_over_lists_and_objects_with_data_variables() -> None:
    src = (
        "{{#each items}}{{@index}}:{{this.n}}{{#if @first}}^{{/if}}{{#if @last}}${{/if}},{{/each}}"
    )
    assert r(src, {"items": [{"n": "a"}, {"n": "b"}, {"n": "c"}]}) == "0:a^,1:b,2:c$,"
    assert r("{{#each m}}{{@key}}={{this}};{{/each}}", {"m": {"x": 1, "y": 2}}) == "x=1;y=2;"
    assert r("{{#each e}}x{{else}}empty{{/each}}", {"e": []}) == "empty"
    assert r("{{#each e}}x{{else}}none{{/each}}", {}) == "none"
    parent = "{{#each items}}{{name}}/{{../name}}/{{@root.name}} {{/each}}"
    assert r(parent, {"name": "top", "items": [{"name": "in"}]}) == "in/top/top "
    params = "{{#each items as |item i|}}{{i}}={{item}} {{/each}}"
    assert r(params, {"items": ["a", "b"]}) == "0=a 1=b "
    nested = "{{#each rows}}{{#each this}}{{@../index}}{{this}}{{/each}};{{/each}}"
    assert r(nested, {"rows": [[1, 2], [3]]}) == "0102;13;"


def test_with_and_mustache_sections() -> None:
    assert (
        r("{{#with user}}{{first}} {{../x}}{{/with}}", {"user": {"first": "Jo"}, "x": 1}) == "Jo 1"
    )
    assert r("{{#with missing}}a{{else}}b{{/with}}", {}) == "b"
    assert r("{{#with user as |u|}}{{u.first}}{{/with}}", {"user": {"first": "Jo"}}) == "Jo"
    assert (
        r("{{#people}}{{name}},{{/people}}", {"people": [{"name": "A"}, {"name": "B"}]}) == "A,B,"
    )
    assert r("{{#flag}}yes{{/flag}}{{^flag}}no{{/flag}}", {"flag": False}) == "no"
    assert r("{{#flag}}yes{{/flag}}{{^flag}}no{{/flag}}", {"flag": True}) == "yes"


# -- SendGrid helpers -------------------------------------------------------------------------
def test_comparison_helpers() -> None:
    eq = "{{#equals a b}}same{{else}}diff{{/equals}}"
    assert r(eq, {"a": 12345, "b": 12345}) == "same"
    assert r(eq, {"a": 12345, "b": "12345"}) == "same"
    assert r(eq, {"a": "x", "b": "y"}) == "diff"
    assert r('{{#equals code "A1"}}win{{/equals}}', {"code": "A1"}) == "win"
    assert r("{{#notEquals a b}}ne{{else}}eq{{/notEquals}}", {"a": 1, "b": 2}) == "ne"
    gt = "{{#greaterThan a b}}gt{{else}}le{{/greaterThan}}"
    assert r(gt, {"a": 10, "b": 9}) == "gt" and r(gt, {"a": "10", "b": "9"}) == "gt"
    assert r(gt, {"a": 1, "b": 9}) == "le" and r(gt, {"a": {}, "b": 9}) == "le"
    assert r("{{#lessThan a 5}}lt{{else}}ge{{/lessThan}}", {"a": 4}) == "lt"
    both = "{{#and a b}}both{{else}}not{{/and}}"
    assert r(both, {"a": 1, "b": "x"}) == "both" and r(both, {"a": 1, "b": ""}) == "not"
    either = "{{#or a b}}one{{else}}none{{/or}}"
    assert r(either, {"a": 0, "b": "x"}) == "one" and r(either, {}) == "none"
    assert r("{{#if (equals a 1)}}sub{{/if}} {{equals a 1}}", {"a": 1}) == "sub true"


def test_length_insert_lookup_and_format_date() -> None:
    assert r("{{length items}}", {"items": [1, 2, 3]}) == "3"
    assert r("{{length nope}}", {}) == "0"
    assert (
        r("{{#greaterThan (length cart) 0}}has{{else}}empty{{/greaterThan}}", {"cart": [1]})
        == "has"
    )
    assert r('Hello {{insert name "default=Customer"}}!', {}) == "Hello Customer!"
    assert r('Hello {{insert name "default=Customer"}}!', {"name": "<Ben>"}) == "Hello &lt;Ben&gt;!"
    assert r('{{lookup m "k"}} {{lookup l 1}}', {"m": {"k": "v"}, "l": [0, 9]}) == "v 9"
    ts = {"t": "2020-01-01T23:00:00.000Z"}
    assert r('{{formatDate t "MMMM DD, YYYY h:mm:ss A"}}', ts) == "January 01, 2020 11:00:00 PM"
    assert r('{{formatDate t "dddd ddd MMM M/D/YY HH:mm ZZ" "-0800"}}', ts) == (
        "Wednesday Wed Jan 1/1/20 15:00 -0800"
    )
    assert r('{{formatDate t "YYYY-MM-DD [at] HH" "+05:30"}}', ts) == "2020-01-02 at 04"
    assert r('{{formatDate t "YYYY"}}', {"t": 1577919600000}) == "2020"
    assert r('{{formatDate t "YYYY"}}', {"t": "not a date"}) == ""
    assert r('{{formatDate t "YYYY" "bogus"}}', ts) == ""


# -- compile errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("{{#if a}}x", "never closed"),
        ("{{#if a}}x{{/each}}", "does not close"),
        ("x{{/if}}", "closes no block"),
        ("{{else}}", "outside a block"),
        ("{{name", "unclosed"),
        ("{{!-- never", "unclosed comment"),
        ("{{> partial}}", "partials"),
        ("{{#> layout}}x{{/layout}}", "partials"),
        ("{{unknownHelper a}}", "missing helper"),
        ("{{#each}}x{{/each}}", "exactly one argument"),
        ("{{(nope a)}}", "missing helper"),
        ("{{}}", "empty"),
        ("{{#if (equals a b}}x{{/if}}", "unclosed '('"),
    ],
)
def test_bad_templates_are_refused_with_a_clear_message(src: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as err:
        compile_template(src)
    assert fragment in err.value.message


def test_compile_limits_size_and_depth() -> None:
    with pytest.raises(TemplateError, match="more than the 100 allowed"):
        compile_template("x" * 101, CompileLimits(max_size=100))
    deep = "{{#if a}}" * 30 + "x" + "{{/if}}" * 30
    with pytest.raises(TemplateError, match="nested deeper"):
        compile_template(deep)
    assert compile_template(deep, CompileLimits(max_depth=30)).render({"a": 1}) == "x"
    subexpr = "{{#if " + "(and " * 30 + "a" + ")" * 30 + "}}x{{/if}}"
    with pytest.raises(TemplateError, match="too deeply"):
        compile_template(subexpr)
    # a hostile depth is refused quickly, not by the Python stack
    t0 = time.perf_counter()
    with pytest.raises(TemplateError):
        compile_template("{{#if a}}" * 100_000)
    assert time.perf_counter() - t0 < 2


# -- render budget ------------------------------------------------------------------------------
def test_huge_nested_loops_are_stopped_by_the_step_budget() -> None:
    src = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}x{{/each}}{{/each}}{{/each}}{{/each}}"
    data = {"a": list(range(1000))}  # 10^12 iterations if nothing stopped it
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="step budget"):
        r(src, data)
    assert time.perf_counter() - t0 < 2
    small = {"a": list(range(3))}
    assert r(src, small) == "x" * 81


def test_gigabyte_expansion_is_stopped_by_the_output_cap() -> None:
    big = "y" * 1_000_000
    src = "{{#each a}}{{#each ../a}}{{{../../big}}}{{/each}}{{/each}}"
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="output size"):
        r(src, {"a": list(range(1000)), "big": big})  # would be 1 TB
    assert time.perf_counter() - t0 < 2
    with pytest.raises(TemplateError, match="output size"):
        r("{{v}}{{v}}", {"v": "abc"}, max_output=5)
    assert r("{{v}}{{v}}", {"v": "abc"}, max_output=6) == "abcabc"
    with pytest.raises(TemplateError, match="output size"):
        r("0123456789", {}, max_output=9)


def test_time_budget_uses_the_injected_clock() -> None:
    ticks = iter(range(0, 10_000, 5))
    budget = {"max_seconds": 3.0, "monotonic": lambda: float(next(ticks))}
    src = "{{#each a}}{{#each ../a}}x{{/each}}{{/each}}"
    with pytest.raises(TemplateError, match="time budget"):
        r(src, {"a": list(range(200))}, **budget)
    # without a clock the same render is only bounded by steps and output
    assert len(r(src, {"a": list(range(200))})) == 40_000


def test_step_budget_counts_every_node() -> None:
    src = "{{a}}" * 10
    assert r(src, {"a": 1}, max_steps=10) == "1" * 10
    with pytest.raises(TemplateError, match="step budget"):
        r(src, {"a": 1}, max_steps=9)


# -- sandbox ---------------------------------------------------------------------------------
class Secret:
    password = "hunter2"

    def __str__(self) -> str:
        raise AssertionError("the engine must never call into Python objects")

    def __getitem__(self, key: object) -> str:
        raise AssertionError("the engine must never index Python objects")


class SneakyDict(dict[str, object]):
    def get(self, *a: object, **k: object) -> object:
        raise AssertionError("dict subclasses are not entered")


def test_no_attribute_access_into_python_objects() -> None:
    data = {"obj": Secret(), "sub": SneakyDict(x=1), "s": "text"}
    src = (
        "{{obj}}{{obj.password}}{{obj.__class__}}{{obj.__class__.__init__.__globals__}}"
        "{{sub.x}}{{s.__class__}}{{s.upper}}{{lookup obj 'password'}}{{#with obj}}{{password}}{{/with}}"
        "{{#each obj}}{{this}}{{/each}}"
    )
    assert r(src, data) == ""
    assert r("{{__class__}}{{constructor}}{{this.__dict__}}", {"a": 1}) == ""


def test_frozen_data_renders_like_plain_json() -> None:
    data = {"user": {"name": "A", "tags": ["x", "y"]}, "n": 1}
    frozen = freeze(data)
    assert isinstance(frozen, MappingProxyType)
    src = "{{user.name}} {{#each user.tags}}{{@index}}{{this}}{{/each}} {{length user.tags}}"
    assert r(src, frozen) == r(src, data) == "A 0x1y 2"
    with pytest.raises(ValueError):
        freeze({"a": object()})
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="deeply"):
        freeze(deep)


# -- cache -------------------------------------------------------------------------------------
def test_cache_compiles_once_and_remembers_failures() -> None:
    cache = TemplateCache(max_entries=2)
    assert cache.render("Hi {{n}}", {"n": 1}) == "Hi 1"
    assert cache.render("Hi {{n}}", {"n": 2}) == "Hi 2"
    assert (cache.hits, cache.misses) == (1, 1)
    for _ in range(2):
        with pytest.raises(TemplateError):
            cache.get("{{#if}}")
    assert cache.misses == 2 and cache.hits == 2
    cache.get("a")
    cache.get("b")
    assert len(cache) == 2
    assert cache.get("b") is cache.get("b")


# -- legacy substitutions ----------------------------------------------------------------------
def test_substitutions_are_literal_and_single_pass() -> None:
    text = "Hello -name-, your code is -code-. -name-!"
    assert substitute(text, {"-name-": "Ann", "-code-": "-name-"}) == (
        "Hello Ann, your code is -name-. Ann!"
    )
    assert substitute("%first% %firstname%", {"%first%": "A", "%firstname%": "B"}) == "A B"
    assert substitute("no keys", {"-x-": "y"}) == "no keys"
    assert substitute("{{x}} <b>", {"{{x}}": "<&>"}) == "<&> <b>"  # no escaping, no templating
    assert substitute("-s-", {"-s-": ":sec"}, {":sec": "Section text"}) == "Section text"


def test_substitution_expansion_is_refused_before_allocating() -> None:
    text = "k" * 100_000
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="output size"):
        substitute(text, {"k": "v" * 100_000})  # 10 GB
    assert time.perf_counter() - t0 < 2
    assert substitute("kk", {"k": "vvv"}, max_output=6) == "vvvvvv"
    with pytest.raises(TemplateError):
        substitute("kk", {"k": "vvv"}, max_output=5)


# -- benchmark ------------------------------------------------------------------------------
def test_benchmark_runs_and_the_template_is_what_it_claims() -> None:
    hbs, plain = template_render.make_template()
    assert 4000 <= len(hbs) <= 4200 and hbs.count("{{") >= 10
    assert "{{" not in plain.replace("{{#", "").replace("{{/", "").replace("{{this}}", "")[:3000]
    rows = template_render.main(["--n", "200"])
    assert rows["engine (compiled template)"] > 0
    assert set(rows) >= {"str.replace x10 (baseline)", "legacy substitutions"}
