import asyncio

from changegate.audit.app import main

asyncio.run(main())
