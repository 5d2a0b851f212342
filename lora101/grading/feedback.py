"""Feedback HTML that keeps each test's result and message but not the hidden tests' code.

nbgrader's ``GenerateFeedback`` renders the autograded notebook as it is: every test cell's full source,
hidden tests included, and the full traceback of a failing one (an open upstream request since 2017,
jupyter/nbgrader#860). Here, for feedback only (the autograded notebook and the gradebook keep everything):

- ``HideHiddenTests`` replaces the lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` of a
  test cell by one comment, and its output by "passed" or the error's name and message (withheld when it
  quotes a hidden line): IPython tracebacks quote the failing line, and a student's function can print or
  raise the cell's own source.
- ``SafeOutputs`` keeps outputs as text and images only (no HTML or JavaScript from ``display``), cut to
  ``CELL_BYTES`` a cell and ``NOTEBOOK_BYTES`` a page; the exporter sanitises markdown (``sanitize_html``).
- ``GetGradesWithStatus`` (nbgrader's ``GetGrades``) marks an answer that still needs a hand grade and has
  none, and the template (``FEEDBACK_TEMPLATE``, extending nbgrader's feedback template) writes
  "awaiting grading" instead of "Score: 0.0 / 2.0" and says how many points await grading in the heading.

The classes are built on first use (importing nbgrader takes a second; ``lora101 --help`` should not pay).
"""

from __future__ import annotations

from functools import cache

HIDDEN_PLACEHOLDER = "# (hidden tests: they ran when this notebook was graded; their code is not shown)"
CELL_BYTES = 20_000  # of text output a cell shows in feedback
NOTEBOOK_BYTES = 400_000  # of text output a whole feedback page shows
MESSAGE_CHARS = 500  # of a failing hidden test's message
SAFE_MIME = ("text/plain", "image/png", "image/jpeg")

# nbgrader 0.9.6's feedback template (template_name 'feedback', which nbgrader's GenerateFeedback sets: its
# folder comes first on the search path, so 'index.html.j2' is that template) is extended. Its blocks that
# show scores (body: the heading and table of contents; markdowncell and input: each graded cell) are
# repeated with "awaiting grading" where a hand grade is missing. Its macros cannot be overridden (with three
# levels of templates Jinja keeps the parent's), hence the lora101_ names. tests/course/test_feedback.py checks the
# real output.
FEEDBACK_TEMPLATE = r"""
{%- extends 'index.html.j2' -%}

{% macro lora101_points(cell) -%}
{%- if cell.metadata.nbgrader.awaiting_grade -%}
awaiting grading, {{ cell.metadata.nbgrader.points | float | round(2) }} points
{%- else -%}
Score: {{ cell.metadata.nbgrader.score | float | round(2) }} / {{ cell.metadata.nbgrader.points | float | round(2) }}
{%- endif -%}
{%- endmacro %}

{% macro lora101_score(cell) -%}
  <span class="pull-right">{{ lora101_points(cell) }} <a href="#top">(Top)</a></span>
{%- endmacro %}

{% macro lora101_heading(cell) -%}
{%- if cell.metadata.nbgrader.solution or cell.metadata.nbgrader.task -%}
<a name="comment-{{ cell.metadata.nbgrader.grade_id }}"></a>
{%- endif -%}
{%- if cell.metadata.nbgrader.grade -%}
<a name="{{ cell.metadata.nbgrader.grade_id }}"></a>
{%- endif -%}
<div class="panel-heading">
{%- if cell.metadata.nbgrader.solution -%}
  <span class="nbgrader-label">Student's answer</span>
  {%- if cell.metadata.nbgrader.grade  -%}
  {{ lora101_score(cell) }}
  {%- else -%}
  <span class="pull-right"><a href="#top">(Top)</a></span>
  {%- endif -%}
{%- elif cell.metadata.nbgrader.task -%}
  <span class="nbgrader-label">Student's task</span>
  {{ lora101_score(cell) }}
{%- elif cell.metadata.nbgrader.grade -%}
  <span class="nbgrader-label">Grade cell: <code>{{ cell.metadata.nbgrader.grade_id }}</code></span>
  {{ lora101_score(cell) }}
{%- endif -%}
</div>
{%- endmacro %}

{% macro lora101_footer(cell) -%}
{%- if (cell.metadata.nbgrader.solution or cell.metadata.nbgrader.task) and cell.metadata.nbgrader.comment -%}
<div class="panel-footer">
  <div>
    <b>Comments:</b> {{ cell.metadata.nbgrader.comment | markdown2html | strip_files_prefix }}
  </div>
</div>
{%- endif -%}
{%- endmacro %}

{#- A graded cell in a panel with its heading (score) and footer (comments), any other cell plain. -#}
{% macro lora101_cell(cell, graded, area_class) -%}
  {%- if graded -%}
  <div class="panel panel-primary nbgrader_cell">
    {{ lora101_heading(cell) }}
    <div class="panel-body">
      <div class="{{ area_class }}">
        {{ caller() }}
      </div>
    </div>
    {{ lora101_footer(cell) }}
  </div>
  {%- else -%}
  <div class="inner_cell">
    <div class="{{ area_class }}">
      {{ caller() }}
    </div>
  </div>
  {%- endif -%}
{%- endmacro %}

{% block markdowncell scoped %}
<div class="cell border-box-sizing text_cell rendered">
  {{ self.empty_in_prompt() }}
  {%- set graded = 'nbgrader' in cell.metadata and (cell.metadata.nbgrader.solution or cell.metadata.nbgrader.grade or cell.metadata.nbgrader.task) -%}
  {%- call lora101_cell(cell, graded, "text_cell_render border-box-sizing rendered_html") -%}
    {{ cell.source | markdown2html | strip_files_prefix }}
  {%- endcall -%}
</div>
{% endblock markdowncell %}

{% block input %}
  {%- set graded = 'nbgrader' in cell.metadata and (cell.metadata.nbgrader.solution or cell.metadata.nbgrader.grade) -%}
  {%- call lora101_cell(cell, graded, "input_area") -%}
    {{ cell.source | highlight_code(metadata=cell.metadata) }}
  {%- endcall -%}
{% endblock input %}

{% block body %}
<body>
  <a name="top"></a>
  <div class="container">
    <div class="panel panel-default">
      <div class="panel-heading">
        <h4>{{ resources.nbgrader.notebook }} (Score: {{ resources.nbgrader.score | float | round(2) }} / {{ resources.nbgrader.max_score | float | round(2) }}
        {%- if resources.nbgrader.awaiting_points %}; {{ resources.nbgrader.awaiting_points | float | round(2) }} points awaiting grading{% endif %})</h4>
        <div id="toc">
          <ol>
          {% for cell in nb.cells %}
            {% if cell.metadata.nbgrader and cell.metadata.nbgrader.grade and not cell.metadata.nbgrader.solution %}
            <li><a href="#{{ cell.metadata.nbgrader.grade_id }}">Test cell</a> ({{ lora101_points(cell) }})</li>
            {% elif cell.cell_type == "code" and cell.metadata.nbgrader and cell.metadata.nbgrader.grade %}
            <li><a href="#{{ cell.metadata.nbgrader.grade_id }}">Coding free-response</a> ({{ lora101_points(cell) }})</li>
            {% elif cell.cell_type == "markdown" and cell.metadata.nbgrader and cell.metadata.nbgrader.grade %}
            <li><a href="#{{ cell.metadata.nbgrader.grade_id }}">Written response</a> ({{ lora101_points(cell) }})</li>
            {% elif cell.cell_type == "markdown" and cell.metadata.nbgrader and cell.metadata.nbgrader.task %}
            <li><a href="#{{ cell.metadata.nbgrader.grade_id }}">Task</a> ({{ lora101_points(cell) }})</li>
            {% endif %}
            {% if cell.metadata.nbgrader and cell.metadata.nbgrader.comment %}
            <li><a href="#comment-{{ cell.metadata.nbgrader.grade_id }}">Comment</a></li>
            {% endif %}
          {% endfor %}
          {% if resources.nbgrader.late_penalty > 0 %}
            <li class="late-penalty">Late submission penalty (Score: -{{ resources.nbgrader.late_penalty | float | round(2) }})</li>
          {% endif %}
          </ol>
        </div>
      </div>
      <div class="panel-body">
        <div id="notebook" class="border-box-sizing">
          <div class="container" id="notebook-container">
            {{ super.super() }}
          </div>
        </div>
      </div>
    </div>
  </div>
</body>
{%- endblock body %}
"""


def hide_hidden_tests(source: str, begin: str = "BEGIN HIDDEN TESTS", end: str = "END HIDDEN TESTS") -> str:
    """``source`` with each hidden-test region (delimiters included) replaced by ``HIDDEN_PLACEHOLDER``.

    An unclosed region hides everything after its start (nbgrader itself would refuse such a cell)."""
    kept, hidden = [], False
    for line in source.splitlines():
        if not hidden and begin in line:
            hidden = True
            kept.append(line[: len(line) - len(line.lstrip())] + HIDDEN_PLACEHOLDER)
        elif hidden:
            hidden = end not in line
        else:
            kept.append(line)
    return "\n".join(kept)


def hidden_lines(source: str, begin: str = "BEGIN HIDDEN TESTS", end: str = "END HIDDEN TESTS") -> list[str]:
    """The stripped, non-trivial lines of ``source``'s hidden-test regions."""
    lines, hidden = [], False
    for line in source.splitlines():
        if begin in line:
            hidden = True
        elif end in line:
            hidden = False
        elif hidden and len(line.strip()) >= 8:
            lines.append(line.strip())
    return lines


def test_outcome(outputs: list, hidden: list[str]):
    """One output for a test cell with hidden tests: "passed", or the error's name and message (withheld
    when it quotes a hidden line, cut to ``MESSAGE_CHARS``)."""
    from nbformat import NotebookNode

    errors = [o for o in outputs if o.get("output_type") == "error"]
    if not errors:
        return NotebookNode(output_type="stream", name="stdout", text="passed\n")
    ename, message = errors[-1].get("ename", "Error"), str(errors[-1].get("evalue", ""))
    if any(line in message for line in hidden):
        message = "(message withheld: it quotes the hidden tests)"
    message = message[:MESSAGE_CHARS] + (" ..." if len(message) > MESSAGE_CHARS else "")
    return NotebookNode(output_type="error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"])


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: max(limit, 0)].decode("utf-8", "ignore") + f"\n... (cut: {len(data):,} bytes in all)\n"


def safe_outputs(outputs: list, left: int) -> tuple[list, int]:
    """``outputs`` reduced to text and images within ``CELL_BYTES`` and the ``left`` bytes of the notebook's
    budget; returns them and what is left of the budget."""
    kept, budget = [], min(CELL_BYTES, left)
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            output["text"] = _cut(output.get("text", ""), budget)
            budget -= len(output["text"].encode())
        elif kind == "error":
            output["traceback"] = [_cut("\n".join(output.get("traceback", [])), budget)]
            budget -= len(output["traceback"][0].encode())
        elif kind in ("display_data", "execute_result"):
            data = {k: v for k, v in output.get("data", {}).items() if k in SAFE_MIME}
            if "text/plain" in data:
                data["text/plain"] = _cut(str(data["text/plain"]), budget)
                budget -= len(data["text/plain"].encode())
            if not data:
                data = {"text/plain": "(output not shown in feedback: HTML or scripts are not rendered here)"}
            output["data"], output["metadata"] = data, {}
        kept.append(output)
        if budget <= 0:
            break
    return kept, left - (min(CELL_BYTES, left) - max(budget, 0))


@cache
def preprocessors() -> list:
    """``[GetGradesWithStatus, HideHiddenTests]``: nbgrader preprocessors for ``GenerateFeedback``."""
    from nbgrader.preprocessors import ClearHiddenTests, GetGrades, NbGraderPreprocessor
    from nbgrader.utils import is_grade, is_solution

    class GetGradesWithStatus(GetGrades):
        """nbgrader's ``GetGrades``, plus ``awaiting_grade`` on answers that need a hand grade and have none."""

        def preprocess(self, nb, resources):
            resources["nbgrader"]["awaiting_points"] = 0.0
            return super().preprocess(nb, resources)

        def _get_score(self, cell, resources):
            super()._get_score(cell, resources)
            grade = self.gradebook.find_grade(
                cell.metadata["nbgrader"]["grade_id"], self.notebook_id, self.assignment_id, self.student_id
            )
            awaiting = bool(grade.needs_manual_grade) and grade.manual_score is None
            cell.metadata.nbgrader["awaiting_grade"] = awaiting
            if awaiting:
                resources["nbgrader"]["awaiting_points"] += float(grade.max_score or 0)

    class HideHiddenTests(NbGraderPreprocessor):
        """Feedback only: a test cell's hidden tests become one comment, and its output only "passed" or
        the error's name and message (anything the cell printed could quote the hidden tests: a student's
        function can read the cell's source from IPython's history and print it, or raise it)."""

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type != "code" or not is_grade(cell) or is_solution(cell):
                return cell, resources
            delimiters = ClearHiddenTests(config=self.config)
            begin, end = delimiters.begin_test_delimeter, delimiters.end_test_delimeter
            if begin not in cell.source:
                return cell, resources
            hidden = hidden_lines(cell.source, begin, end)
            cell.source = hide_hidden_tests(cell.source, begin, end)
            cell.outputs = [test_outcome(cell.get("outputs", []), hidden)]
            return cell, resources

    class SafeOutputs(NbGraderPreprocessor):
        """Feedback only: outputs kept as plain text or images (no HTML, JavaScript or markdown a student's
        code displayed), each cell's text cut to ``CELL_BYTES`` and the notebook's to ``NOTEBOOK_BYTES``."""

        def preprocess(self, nb, resources):
            self._left = NOTEBOOK_BYTES
            return super().preprocess(nb, resources)

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type == "code":
                cell.outputs, self._left = safe_outputs(cell.get("outputs", []), self._left)
            return cell, resources

    return [GetGradesWithStatus, HideHiddenTests, SafeOutputs]


@cache
def feedback_exporter():
    """nbconvert's ``HTMLExporter`` with ``FEEDBACK_TEMPLATE``: a subclass, so that other HTML exports
    (nbgrader's formgrader among them) keep their own templates."""
    from nbconvert.exporters import HTMLExporter
    from traitlets import default

    class FeedbackExporter(HTMLExporter):
        @default("sanitize_html")
        def _sanitize_html_default(self):
            return True  # a student's markdown answer is theirs; a <script> in it must not run for anyone

        @default("raw_template")
        def _raw_template_default(self):
            return FEEDBACK_TEMPLATE

    return FeedbackExporter


def configure_feedback(c) -> None:
    """Make nbgrader's ``GenerateFeedback`` in config ``c`` use the preprocessors and template above."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor

    c.GenerateFeedback.preprocessors = [*preprocessors(), CSSHTMLHeaderPreprocessor]
    c.GenerateFeedback.exporter_class = feedback_exporter()
