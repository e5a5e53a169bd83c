import asyncio

from changegate.ingest.app import main

asyncio.run(main())
