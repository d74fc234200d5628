"""Reshape a shop's order into the pick list format the warehouse imports.

The shop sends prices in minor units (cents) and one line per product; the
warehouse wants a flat list of SKUs with quantities, the shipping address on
one object, and a priority derived from the shipping method.
"""
import json

PRIORITY_BY_SHIPPING = {"express": "high", "standard": "normal", "economy": "low"}


def handle(data):
    order = json.loads(data["payload"])
    address = order["customer"]["shipping_address"]
    pick_list = {
        "reference": f"WH-{order['id']}",
        "priority": PRIORITY_BY_SHIPPING.get(order["shipping"]["method"], "normal"),
        "ship_to": {
            "name": f"{order['customer']['first_name']} {order['customer']['last_name']}",
            "street": address["line1"],
            "postcode": address["zip"],
            "city": address["city"],
            "country": address["country_code"].upper(),
        },
        "lines": [
            {"sku": item["sku"], "quantity": item["qty"]}
            for item in order["items"]
            if not item.get("digital", False)
        ],
        "declared_value": round(sum(item["qty"] * item["unit_price_cents"] for item in order["items"]) / 100, 2),
    }
    print(f"order {order['id']}: {len(pick_list['lines'])} lines for the warehouse")
    data["payload"] = json.dumps(pick_list, sort_keys=True)
    data["meta"]["warehouse_reference"] = pick_list["reference"]
    data["logs"] = [f"order {order['id']} mapped to {pick_list['reference']}"]
    return data
