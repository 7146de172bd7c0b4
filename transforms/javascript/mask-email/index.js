// mask-email: masks the local part of an e-mail column in every row's new values.
//
// Settings: `column=NAME` (default `email`), `mode=stars|hash` (default `stars`).
// Only text values change; NULL, unchanged TOAST values and the row's key stay.

import { mask, parse } from './mask.js';

let settings = parse([]);
// Table id -> position of the masked column in its rows' values, or -1.
const positions = new Map();

/** A thrown string becomes init's error. */
export function init(config) {
  settings = parse(config);
  positions.clear();
  return [];
}

export function transform(tables, rows, _ctx) {
  for (const table of tables) {
    positions.set(table.id, table.columns.findIndex((c) => c.name === settings.column));
  }
  return rows.map(outcome);
}

function outcome(row) {
  const at = positions.get(row.table) ?? -1;
  const value = row.values[at];
  if (value === undefined || value.tag !== 'text') return { tag: 'keep' };
  const masked = mask(value.val, settings.mode);
  if (masked === value.val) return { tag: 'keep' };
  const values = row.values.slice();
  values[at] = { tag: 'text', val: masked };
  return { tag: 'values', val: values };
}
