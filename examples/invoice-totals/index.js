// Compute invoice totals for an accounting system: net per line, tax by
// rate, gross total, all in integer cents so no rounding drifts. The
// `currency` variable is copied onto the result (default "EUR").
'use strict';

function handle(data) {
  const invoice = JSON.parse(data.payload);
  const taxByRate = {};
  let net = 0;
  const lines = invoice.lines.map((line) => {
    const lineNet = line.quantity * line.unit_cents;
    const tax = Math.round((lineNet * line.tax_percent) / 100);
    taxByRate[line.tax_percent] = (taxByRate[line.tax_percent] || 0) + tax;
    net += lineNet;
    return { description: line.description, net_cents: lineNet, tax_cents: tax };
  });
  const tax = Object.values(taxByRate).reduce((sum, value) => sum + value, 0);
  data.payload = JSON.stringify({
    invoice: invoice.number,
    currency: data.variables.currency || 'EUR',
    lines,
    tax_by_rate: taxByRate,
    net_cents: net,
    tax_cents: tax,
    gross_cents: net + tax,
  });
  data.logs = [`invoice ${invoice.number}: gross ${net + tax} cents`];
  return data;
}

module.exports = handle;
