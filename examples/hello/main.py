"""The smallest function: echo the event with a greeting."""


def handler(event, context):
    name = (event or {}).get("name", "world")
    print(f"greeting {name} in request {context.request_id}")
    return {"message": f"Hello, {name}!", "remainingMs": context.get_remaining_time_in_millis()}
