// Turn a CSV export into JSON records, one object per row, keyed by the
// header row. The `delimiter` variable picks the separator (default ",");
// quoted fields may contain the delimiter, doubled quotes and newlines.
'use strict';

function parseCsv(text, delimiter) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === delimiter) {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
    } else {
      field += c;
    }
  }
  if (field !== '' || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows.filter((cells) => cells.some((cell) => cell !== ''));
}

module.exports = async function (data) {
  const delimiter = data.variables.delimiter || ',';
  const [header, ...rows] = parseCsv(String(data.payload), delimiter);
  const records = rows.map((cells) => Object.fromEntries(header.map((name, i) => [name.trim(), cells[i] ?? null])));
  console.log(`parsed ${records.length} records`);
  data.payload = JSON.stringify(records);
  data.meta.record_count = String(records.length);
  return data;
};
