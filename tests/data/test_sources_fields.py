"""The small grammars of sharded sources: brace patterns, field specs, labels."""

from __future__ import annotations

import pytest

from featurecache.core._validation import ParameterError
from featurecache.data._fields import FieldSpec, label_indices, parse_field
from featurecache.data._files import expand_braces, is_url
from featurecache.exceptions import InvalidArgumentError


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("a.tar", ["a.tar"]),
        (
            "s/{000008..000011}.tar",
            ["s/000008.tar", "s/000009.tar", "s/000010.tar", "s/000011.tar"],
        ),
        ("{8..11}.tar", ["8.tar", "9.tar", "10.tar", "11.tar"]),
        ("{2..0}.tar", ["2.tar", "1.tar", "0.tar"]),
        ("{train,test}-{0..1}.tar", ["train-0.tar", "train-1.tar", "test-0.tar", "test-1.tar"]),
        ("{a-{0..1},b}.tar", ["a-0.tar", "a-1.tar", "b.tar"]),
        ("x{a,b.tar", ["x{a,b.tar"]),
    ],
)
def test_brace_patterns_expand_in_order_with_their_padding(pattern, names):
    assert expand_braces(pattern) == names


def test_urls_and_paths():
    assert is_url("s3://b/k.tar") and is_url("https://127.0.0.1:9/x.tar") and is_url("gs://b/x")
    assert not is_url("data/x.tar") and not is_url("file:///x.tar") and not is_url("C:x.tar")


@pytest.mark.parametrize(
    ("spec", "raw", "value"),
    [
        ("cls", b"3\n", "3"),
        ("json:label", b'{"label": "bee", "split": "train"}', "bee"),
        ("json:meta.label", '{"meta": {"label": 7}}', "7"),
        ("json:label", b'{"other": 1}', None),
        ("json:label", b"not json", None),
        ("label", {"label": 1}, "{'label': 1}"),
        ("label", "  ", None),
        ("label", None, None),
    ],
)
def test_a_field_spec_reads_text_json_and_structs(spec, raw, value):
    assert parse_field(spec, "label_field", "ParquetImages").value(raw) == value


def test_a_bad_field_spec_is_refused_with_the_template():
    with pytest.raises(ParameterError, match=r"The 'label_field' parameter of WebDataset must be "
                       r"FIELD or FIELD:KEY, e\.g\. 'cls' or 'json:label'\. Got 'a:b:c' instead"):  # fmt: skip
        parse_field("a:b:c", "label_field", "WebDataset")
    assert parse_field("JSON:Label", "label_field", "WebDataset", True) == FieldSpec(
        "json", "Label"
    )
    assert parse_field("Label", "label_field", "ParquetImages") == FieldSpec("Label")


def test_labels_index_the_class_list_or_name_their_classes():
    assert label_indices(["1", None, "0"], None, "x") == (pytest.approx([1, -1, 0]), ("0", "1"))
    labels, names = label_indices(["bee", "ant", None], None, "x")
    assert labels.tolist() == [1, 0, -1] and names == ("ant", "bee")
    labels, names = label_indices(["2", "0"], ("a", "b", "c"), "x")
    assert labels.tolist() == [2, 0] and names == ("a", "b", "c")
    assert label_indices(["c", "a"], ("a", "b", "c"), "x")[0].tolist() == [2, 0]
    with pytest.raises(InvalidArgumentError, match=r"^x: label 3 is not an index of the 3 classes"):
        label_indices(["3"], ("a", "b", "c"), "x")
    with pytest.raises(InvalidArgumentError, match=r"label 'bea' is not one of the classes given "
                       r"\(ant, bee\)\. Did you mean 'bee'\?"):  # fmt: skip
        label_indices(["bea"], ("ant", "bee"), "x")
