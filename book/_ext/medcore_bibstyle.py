"""One citation style for the whole book: the label a reader sees in the text, "[Dettmers et al., 2023]", is the
label the bibliography lists; an entry without an author (the seed study) is cited by its title."""
from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _plain(text: str) -> str:
    return text.replace("{", "").replace("}", "")


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield self.label(entry)

    @staticmethod
    def label(entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        year = entry.fields.get("year")
        if not persons:
            title = _plain(entry.fields.get("shorttitle") or entry.fields.get("title", entry.key))
            return f"{title}, {year}" if year else title
        last = [_plain(" ".join(p.prelast_names + p.last_names)) for p in persons]
        names = last[0] if len(last) == 1 else " and ".join(last) if len(last) == 2 else f"{last[0]} et al."
        return f"{names}, {year}" if year else names


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "medcore_author_year"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "medcore_author_year", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "medcore_author_year", AuthorYearStyle)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
