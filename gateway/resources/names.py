"""Names of DNS resources: one name (`app.corp.test`) or every name below one (`*.corp.test`)."""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name

MAX_NAME_BYTES = 253


@dataclass(frozen=True, slots=True)
class NamePattern:
    name: dns.name.Name  # absolute, lower case
    wildcard: bool  # `*.name`: every name strictly below `name`

    def matches(self, name: dns.name.Name) -> bool:
        name = name.canonicalize()
        if self.wildcard:
            return name != self.name and bool(name.is_subdomain(self.name))
        return bool(name == self.name)

    def __str__(self) -> str:
        text = self.name.to_text(omit_final_dot=True)
        return f"*.{text}" if self.wildcard else text


def parse_name_pattern(text: str) -> NamePattern:
    """`app.corp.test` or `*.corp.test`; ValueError saying what is wrong."""
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    if not body or body.startswith(".") or "*" in body:
        raise ValueError(f"expected a DNS name such as app.corp.test or *.corp.test, got {text!r}")
    if len(body.rstrip(".")) > MAX_NAME_BYTES:
        raise ValueError(f"name is longer than {MAX_NAME_BYTES} characters")
    for label in body.rstrip(".").split("."):
        if not label or not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            raise ValueError(
                f"{text!r}: label {label!r} is not a host name label (letters, digits, - and _)"
            )
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"{text!r}: label {label!r} starts or ends with '-'")
    try:
        name = dns.name.from_text(body).canonicalize()
    except dns.exception.DNSException as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if len(name.labels) < 2:  # noqa: PLR2004 - the root label and at least one more
        raise ValueError(f"{text!r} is the root")
    return NamePattern(name, wildcard)
