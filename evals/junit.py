"""An evaluation's result as JUnit XML, the report format CI systems read: one test case
per turn, a failure per failed turn naming each expectation it missed and what was got."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from evals.engine import SuiteResult


def junit_xml(result: SuiteResult) -> bytes:
    failed = sum(not t.passed for t in result.turns)
    root = ET.Element("testsuites", name=result.name, tests=str(len(result.turns)),
                      failures=str(failed), time=f"{result.seconds:.3f}")
    suite = ET.SubElement(root, "testsuite", name=result.name, tests=str(len(result.turns)),
                          failures=str(failed), errors="0", skipped="0", time=f"{result.seconds:.3f}",
                          file=str(result.path))
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="llm", value=result.llm)
    ET.SubElement(properties, "property", name="judge", value=result.judge or "none")
    for turn in result.turns:
        case = ET.SubElement(suite, "testcase", classname=f"{result.name}.{turn.conversation}",
                             name=f"turn {turn.n}: {turn.input}", time=f"{turn.seconds:.3f}",
                             file=str(result.path), line=str(turn.line))
        misses = turn.failures
        if misses:
            failure = ET.SubElement(case, "failure", type="expectation",
                                    message="; ".join(c.expected for c in misses))
            failure.text = "\n".join(f"{result.path}:{c.line}: {c.expected}: got {c.got}" for c in misses)
        out = [f"input: {turn.input}"]
        if turn.transcript is not None:
            out.append(f"transcript: {turn.transcript}")
        out.append(f"answer: {turn.answer if turn.answer is not None else '-'}")
        out += [f"tool: {t}" for t in turn.tools]
        out += [f"{stage}: {ms:.0f}" for stage, ms in turn.latency_ms.items()]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(result: SuiteResult, path: Path) -> None:
    path.write_bytes(junit_xml(result))
