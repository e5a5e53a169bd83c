import asyncio

from changegate.review_api.app import main

asyncio.run(main())
