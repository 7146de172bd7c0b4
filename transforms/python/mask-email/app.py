"""mask-email: masks the local part of an e-mail column in every row's new values.

Settings: `column=NAME` (default `email`), `mode=stars|hash` (default `stars`).
Only text values change; NULL, unchanged TOAST values and the row's key stay.
"""

from componentize_py_types import Err
import wit_world
from wit_world.imports.types import Outcome_Keep, Outcome_Values, Value_Text

import mask

settings = mask.Settings()
# Table id -> position of the masked column in its rows' values, or None.
positions = {}


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global settings
        try:
            settings = mask.parse(config)
        except ValueError as e:
            raise Err(str(e))
        positions.clear()
        return []

    def transform(self, tables, rows, ctx):
        for table in tables:
            names = [c.name for c in table.columns]
            positions[table.id] = names.index(settings.column) if settings.column in names else None
        return [outcome(row) for row in rows]


def outcome(row):
    at = positions.get(row.table)
    if at is None or at >= len(row.values):
        return Outcome_Keep()
    value = row.values[at]
    if not isinstance(value, Value_Text):
        return Outcome_Keep()
    masked = mask.mask(value.value, settings.mode)
    if masked == value.value:
        return Outcome_Keep()
    values = list(row.values)
    values[at] = Value_Text(masked)
    return Outcome_Values(values)
