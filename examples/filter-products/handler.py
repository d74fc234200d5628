"""Filter a product feed down to what a marketplace should list.

Variables: `category` (required) keeps products of that category;
`max_price` (optional, in the feed's currency) drops dearer ones. Products
out of stock are always dropped. The result is sorted by price.
"""
import json
from decimal import Decimal


def handle(data):
    category = data["variables"].get("category")
    if not category:
        raise ValueError("set the variable category, for example --var category=outdoor")
    max_price = Decimal(data["variables"].get("max_price", "Infinity"))
    products = json.loads(data["payload"])["products"]
    kept = [
        product
        for product in products
        if product["category"] == category
        and product["stock"] > 0
        and Decimal(product["price"]) <= max_price
    ]
    kept.sort(key=lambda product: Decimal(product["price"]))
    data["payload"] = json.dumps({"category": category, "count": len(kept), "products": kept})
    data["logs"] = [f"kept {len(kept)} of {len(products)} products"]
    return data
